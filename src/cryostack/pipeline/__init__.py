"""Jobs that chain the tools: the demo, a refinement on files, and ``cryostack run``."""
