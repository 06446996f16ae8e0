"""(placeholder: filled in by the sparse work)"""
__all__: list = []
