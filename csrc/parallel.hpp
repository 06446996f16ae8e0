// A small std::thread pool (no OpenMP: wheels that vendor libgomp clash with torch/numpy runtimes).
// Work is cut into tasks by the caller with a fixed size, independent of the thread count, so results
// never depend on how many threads run them. The calling thread works too.
#pragma once
#include <functional>

#include "common.hpp"

namespace pyquant {

int get_num_threads();
void set_num_threads(int n);  // n >= 1
int default_num_threads();    // cores this process may run on

// Runs task(i) for every i in [0, n_tasks), on up to get_num_threads() threads. Safe to call from several
// threads at once: a call that finds the pool busy runs its tasks on its own thread.
void parallel_for(index_t n_tasks, const std::function<void(index_t)>& task);

// Tasks for `work` units when each task should hold at least `min_per_task` units: fixed by the sizes only.
inline index_t task_count(index_t work, index_t min_per_task) {
    return work <= 0 ? 0 : ceil_div(work, min_per_task);
}

}  // namespace pyquant
