"""snc's own Lava processes (a package of their own: Lava imports every module
next to a process when it looks for its models)."""
