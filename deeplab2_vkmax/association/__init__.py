"""Cross-clip association (paper Sec. 3.2-3.3): numpy/scipy only, no Keras.

`VideoAssociater` is the entry point; `VideoStitcher`, `HiLAMemoryBuffer`,
`NaiveMemoryBuffer` and the pure functions in `matching` are its parts.
"""
