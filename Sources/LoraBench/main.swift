import LoRA
try BLAS.load()
print(BLAS.coreName, BLAS.initialCoreName, BLAS.config)
