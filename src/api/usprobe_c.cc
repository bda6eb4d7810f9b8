// C API: filled in by the core.
