#include "parallel.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pyquant {
namespace {

class ThreadPool {
public:
    ~ThreadPool() = delete;  // never destroyed: workers park on a condition variable until the process exits
    ThreadPool() = default;

    void run(index_t n, const std::function<void(index_t)>& task, int threads) {
        std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
        int helpers = static_cast<int>(std::min<index_t>(threads, n)) - 1;
        if (!busy.owns_lock() || helpers <= 0) {
            for (index_t i = 0; i < n; ++i) task(i);
            return;
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            while (static_cast<int>(workers_.size()) < helpers) {
                int id = static_cast<int>(workers_.size());
                workers_.emplace_back([this, id] { worker_loop(id); });
            }
            task_ = &task;
            n_ = n;
            caller_cpu_ = sched_getcpu();
            next_.store(0);
            active_ = helpers;
            pending_.store(helpers);
            error_ = nullptr;
            ++generation_;
            published_.store(generation_, std::memory_order_release);
        }
        cv_work_.notify_all();
        work(task, n);
        wait_for_helpers();
        std::lock_guard<std::mutex> lk(m_);
        task_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    void work(const std::function<void(index_t)>& task, index_t n) {
        for (;;) {
            index_t i = next_.fetch_add(1);
            if (i >= n) break;
            try {
                task(i);
            } catch (...) {
                std::lock_guard<std::mutex> lk(m_);
                if (!error_) error_ = std::current_exception();
            }
        }
    }

    // Both sides spin a little before sleeping: kernel calls come in quick succession and tasks are short,
    // and a wake-up through a condition variable costs 5-50 microseconds, as much as a whole small call.
    // After 30 us the spinner also yields its CPU at every check: when the scheduler puts the caller and a
    // worker on the same CPU (at times for tens of milliseconds here, often just after the worker starts),
    // plain spins took turns and every call cost both spins (~300 us, measured; now ~65 us). With a CPU of
    // its own, sched_yield returns at once. (Yielding after 10 us kept the two on one CPU for good.)
    template <class Done>
    static bool spin_until(Done done, int microseconds) {
        auto start = std::chrono::steady_clock::now();
        while (!done()) {
            for (int i = 0; i < 4; ++i) cpu_relax();  // a PAUSE can take ~60 cycles: check often
            auto t = std::chrono::steady_clock::now() - start;
            if (t > std::chrono::microseconds(microseconds)) return false;
            if (t > std::chrono::microseconds(30)) sched_yield();
        }
        return true;
    }

    void wait_for_helpers() {
        auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
        if (spin_until(done, 100)) return;
        std::unique_lock<std::mutex> lk(m_);
        cv_done_.wait(lk, done);
    }

    // A worker woken on the caller's CPU (the scheduler places a wakee next to its waker, and the two spinning
    // threads then only take turns, for up to tens of milliseconds here): move it once to another CPU it may
    // use, then allow every CPU again (it is not moved back).
    static void leave_cpu(int cpu) {
        cpu_set_t all;
        if (sched_getaffinity(0, sizeof(all), &all) != 0 || CPU_COUNT(&all) < 2 || !CPU_ISSET(cpu, &all)) return;
        cpu_set_t others = all;
        CPU_CLR(cpu, &others);
        if (sched_setaffinity(0, sizeof(others), &others) == 0) sched_setaffinity(0, sizeof(all), &all);
    }

    static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ volatile("yield");
#endif
    }

    void worker_loop(int id) {
        std::uint64_t seen = 0;
        for (;;) {
            spin_until([&] { return published_.load(std::memory_order_acquire) != seen; }, 200);
            const std::function<void(index_t)>* task;
            index_t n;
            int caller_cpu;
            {
                std::unique_lock<std::mutex> lk(m_);
                cv_work_.wait(lk, [&] { return generation_ != seen; });
                seen = generation_;
                if (id >= active_) continue;
                task = task_;
                n = n_;
                caller_cpu = caller_cpu_;
            }
            if (caller_cpu >= 0 && sched_getcpu() == caller_cpu) leave_cpu(caller_cpu);
            work(*task, n);
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(m_);  // pairs with the caller's predicate check: no lost wake-up
                cv_done_.notify_all();
            }
        }
    }

    std::mutex run_mutex_;  // one parallel job at a time
    std::mutex m_;
    std::condition_variable cv_work_, cv_done_;
    std::vector<std::thread> workers_;
    std::uint64_t generation_ = 0;
    std::atomic<std::uint64_t> published_{0};  // generation_, readable without the mutex
    const std::function<void(index_t)>* task_ = nullptr;
    index_t n_ = 0;
    std::atomic<index_t> next_{0};
    int active_ = 0;
    int caller_cpu_ = -1;  // CPU the current job was published from
    std::atomic<int> pending_{0};  // helpers still working on the current job
    std::exception_ptr error_;
};

std::mutex g_pool_mutex;
ThreadPool* g_pool = nullptr;
pid_t g_pool_pid = 0;
std::atomic<int> g_num_threads{0};

ThreadPool& pool() {
    std::lock_guard<std::mutex> lk(g_pool_mutex);
    // After fork() the child has none of the parent's workers: start a fresh pool (the old one is leaked).
    if (!g_pool || g_pool_pid != getpid()) {
        g_pool = new ThreadPool();
        g_pool_pid = getpid();
    }
    return *g_pool;
}

}  // namespace

int default_num_threads() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? static_cast<int>(hc) : 1;
}

int get_num_threads() {
    int n = g_num_threads.load(std::memory_order_relaxed);
    if (n <= 0) {
        n = default_num_threads();
        if (const char* env = std::getenv("PYQUANT_NUM_THREADS")) {
            int v = std::atoi(env);
            if (v >= 1) n = v;
        }
        g_num_threads.store(n);
    }
    return n;
}

void set_num_threads(int n) { g_num_threads.store(std::max(1, n)); }

void parallel_for(index_t n_tasks, const std::function<void(index_t)>& task) {
    if (n_tasks <= 0) return;
    int threads = get_num_threads();
    if (threads <= 1 || n_tasks == 1) {
        for (index_t i = 0; i < n_tasks; ++i) task(i);
        return;
    }
    pool().run(n_tasks, task, threads);
}

}  // namespace pyquant
