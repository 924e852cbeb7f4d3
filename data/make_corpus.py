"""Build the synthetic espeak-ng training corpus of the small offline Mimi in data/corpus/.

A thin wrapper around `csmlab.corpus` (see its docstring): `python data/make_corpus.py --help`.
"""
from csmlab.corpus import main

if __name__ == "__main__":
    main()
