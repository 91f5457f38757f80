//! Processes under Linux namespaces, Landlock, seccomp and rlimits: the only crate with `unsafe`.
