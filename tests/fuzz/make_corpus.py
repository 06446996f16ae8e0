"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): small valid inputs, a few KB
each. Deterministic; run it again only when the model file format changes:

    cd tests && python fuzz/make_corpus.py
"""
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fuzz_common as fc  # noqa: E402

import pyquant  # noqa: E402


def main():
    out = os.path.join(HERE, "corpus")
    load_dir = os.path.join(out, "load")
    os.makedirs(load_dir, exist_ok=True)
    for name, model in fc.seed_models().items():
        path = os.path.join(load_dir, name + ".pyquant")
        model.save(path)
    csr_dir = os.path.join(out, "csr")
    os.makedirs(csr_dir, exist_ok=True)
    rng = np.random.default_rng(3)
    for i, (r, c, dens) in enumerate([(3, 5, 0.4), (8, 4, 0.7), (1, 9, 1.0), (6, 6, 0.2)]):
        w = rng.standard_normal((r, c)).astype(np.float32) * (rng.random((r, c)) < dens)
        m = pyquant.CSRMatrix.from_dense(w)
        with open(os.path.join(csr_dir, f"csr{i}.bin"), "wb") as f:
            f.write(fc.encode_csr(np.asarray(m.indptr), np.asarray(m.indices), np.asarray(m.data), m.shape))
    pk_dir = os.path.join(out, "packed")
    os.makedirs(pk_dir, exist_ok=True)
    for i, (k, n) in enumerate([(4, 3), (16, 8), (33, 5)]):
        w = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        pw = pyquant.pack_weights(w, scale=np.float32(0.02), bias=rng.standard_normal(n).astype(np.float32))
        with open(os.path.join(pk_dir, f"packed{i}.pkl"), "wb") as f:
            f.write(pickle.dumps(pw, protocol=4))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote the corpora in {out}: {total} bytes")


if __name__ == "__main__":
    main()
