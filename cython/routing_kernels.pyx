# Placeholder: filled by the routing-kernels work (issue 2).
def _placeholder() -> int:
    return 0
