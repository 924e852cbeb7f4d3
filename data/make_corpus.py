"""Build the synthetic espeak-ng training corpus of the small offline Mimi in data/corpus/.

A thin wrapper around `csmlab.data.corpus` (see its docstring): `python data/make_corpus.py --help`.
"""
from csmlab.data.corpus import main

if __name__ == "__main__":
    main()
