"""Saves models as checkpoint directories (save_pretrained: config.json + model.safetensors) for the C++ app
examples/cpp/pretrained_app.cpp, which loads them without Python: <out_dir>/encoder (an Encoder with ALiBi and
GLU feed-forwards), <out_dir>/lm (a TransformerWrapper over a rotary GQA Decoder), and <out_dir>/tensors.pt (a
TorchScript container with the inputs and Python's outputs, readable from C++ with torch::jit::load).
"""
import argparse
import os

import torch

from x_transformers_cpp import Decoder, Encoder, TransformerWrapper


class _Tensors(torch.nn.Module):
    def __init__(self, **tensors):
        super().__init__()
        for name, value in tensors.items():
            self.register_buffer(name, value)


def _perturbed(model):
    with torch.no_grad():  # non-trivial gains, so the check sees every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = _perturbed(Encoder(dim=64, depth=2, heads=4, attn_dim_head=16, alibi_pos_bias=True, ff_glu=True,
                                 ff_mult=(4, 2)))
    lm = _perturbed(TransformerWrapper(num_tokens=100, max_seq_len=64, attn_layers=Decoder(
        dim=64, depth=2, heads=4, attn_dim_head=16, rotary_pos_emb=True, attn_kv_heads=2, use_rmsnorm=True)))
    embed, mask = torch.randn(2, 37, 64), torch.rand(2, 37) > 0.25
    mask[1, 20:] = False
    tokens = torch.randint(0, 100, (3, 29))
    with torch.no_grad():
        encoded, logits = encoder(embed, mask=mask), lm(tokens)
    encoder.save_pretrained(os.path.join(args.out_dir, "encoder"))
    lm.save_pretrained(os.path.join(args.out_dir, "lm"))
    torch.jit.script(_Tensors(embed=embed, mask=mask, encoded=encoded, tokens=tokens, logits=logits)).save(
        os.path.join(args.out_dir, "tensors.pt"))
    print(f"saved encoder/, lm/ and tensors.pt in {args.out_dir}")


if __name__ == "__main__":
    main()
