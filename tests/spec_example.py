"""Pipelines shared by several test files (one copy each): the SPEC §8 example and a tiny
synthetic-data pipeline that trains in seconds."""

SPEC_EXAMPLE = """\
ftp 1
# Fine-tune a small pretrained encoder, prune it, export it, quantize the ONNX graph.
pipeline sentiment { seed = 13 }

param lr = 3e-5

data reviews {
  source = csv("data/reviews.csv")
  text = "sentence", label = "label"
  split = { train = 0.8, valid = 0.1, test = 0.1 }
  max_length = 64
}

model base {
  pretrained = "sentence-transformers/all-MiniLM-L6-v2"
  task = classify(labels = 2)
}

train finetune {
  model = base, data = reviews
  epochs = 3, batch = 32
  optimizer = adamw(lr = lr, weight_decay = 0.01)
  schedule = linear(warmup = 0.1)
  precision = auto
  early_stop = { metric = "valid.accuracy", mode = max, patience = 2 }
}

prune sparse { from = finetune, method = global_magnitude(amount = 0.3), recover = { epochs = 1 } }
export onnx  { from = sparse, format = onnx(opset = 17), verify = true }
quantize q8  { from = onnx, method = dynamic(dtype = int8) }
evaluate report { models = [finetune, sparse, onnx, q8], data = reviews.test, metrics = [accuracy, f1, latency, size] }
"""

TINY = """\
pipeline tiny { seed = 3 }
param lr = 0.01
data d {
  source = synthetic(task = classify, n = 240, features = 8, classes = 3, seed = 1)
  split = { train = 0.7, valid = 0.15, test = 0.15 }
}
model m {
  arch = mlp(hidden = [16])
  task = classify(labels = 3)
}
train t {
  model = m, data = d
  max_steps = 24, batch = 16
  optimizer = adamw(lr = lr)
  checkpoint_every = 4
  precision = fp32
}
"""
