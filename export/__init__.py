"""ONNX export of lenet_triton's LeNet (standard ops only) and an onnxruntime parity checker."""
