#!/usr/bin/env python3
"""Writes a tiny random-weight llama-architecture GGUF model for tests.

usage: tiny-gguf.py VOCAB_GGUF OUT_GGUF   (gguf-py on PYTHONPATH, numpy installed)

The tokenizer is copied from a llama.cpp vocabulary file (ggml-vocab-llama-spm.gguf, 32000
tokens), so /tokenize and text generation behave like a real model; the weights are random
(seeded), so the text is noise. Context 4096 fits few-shot prompts.
"""
import sys

import numpy as np
import gguf

vocab_path, out_path = sys.argv[1], sys.argv[2]
reader = gguf.GGUFReader(vocab_path)
n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
n_embd, n_layer, n_head, n_ff, n_ctx = 64, 2, 4, 128, 4096

w = gguf.GGUFWriter(out_path, "llama")
w.add_name("kitt-tiny-random")
w.add_context_length(n_ctx)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(gguf.LlamaFileType.ALL_F32)

for field in reader.fields.values():
    if not field.name.startswith("tokenizer."):
        continue
    value = field.contents()
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        w.add_key_value(field.name, value, vtype, sub_type=field.types[-1])
    else:
        w.add_key_value(field.name, value, vtype)

rng = np.random.default_rng(1234)


def tensor(name, *shape):
    w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))


tensor("token_embd.weight", n_vocab, n_embd)
w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
tensor("output.weight", n_vocab, n_embd)
for i in range(n_layer):
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
        tensor(f"blk.{i}.{t}.weight", n_embd, n_embd)
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
    tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
    tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
