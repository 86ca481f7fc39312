"""What makes a model a teacher: its settings (`config.py`: which model, where, sampling, price),
the price table and cost accounting (`prices.py`, `accounting.py`) and the OpenAI Batch API
client (`batch.py`).

The models themselves (endpoints, GGUF files, model folders, vLLM) are not teachers only: the
same backends judge, answer as the system under evaluation and serve. They live in
`alpacakit.models.backends` (`make_backend(TeacherConfig)`).
"""
