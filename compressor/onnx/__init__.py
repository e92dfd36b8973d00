"""ONNX Runtime side of deployment: running and checking exported graphs (check), timing them (bench, decode),
optimizing and quantizing them (optimize, weight_only), keeping tied weights stored once (tied), and the
ONNX Runtime GenAI configuration written beside a causal LM (genai)."""
