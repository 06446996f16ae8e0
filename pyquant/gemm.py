"""(placeholder: filled in by the gemm work)"""
__all__: list = []
