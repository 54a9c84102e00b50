"""Other CLIs' credential files, in one home: one module per CLI format, the watcher, the CLIs' locks."""
