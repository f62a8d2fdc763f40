"""How much a template from a request may take: its size, nesting, steps and output."""

MAX_TEMPLATE_CHARS = 100_000
MAX_OUTPUT_CHARS = 1_000_000  # the output, and any one string a template builds
MAX_DEPTH = 32  # nested blocks and parentheses
MAX_STEPS = 200_000  # nodes evaluated and loop iterations, all together
