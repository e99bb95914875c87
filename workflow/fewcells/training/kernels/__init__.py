"""The compiled CPU kernels: C++ sources (the paper CNN's first three blocks in
`paper_stem.cpp`, the augmentation's rotation in `rotate.cpp`), `loader.load_kernel`, which
builds and loads them, and `paper_stem`, the autograd function around the first kernel."""
