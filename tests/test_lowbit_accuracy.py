"""Training with low-precision states reaches the accuracy of float32 states (issue 13, fixed seeds):
the digits demo's MLP (fastlr.demo) with AdamW, and a tiny GPT-2-shaped language model (fastlr.torch)."""
import numpy as np
import pytest

import fastlr


def test_digits_test_accuracy_close_to_fp32():
    """8-bit and bf16 states within 0.5 percentage points of fp32's test accuracy, 4-bit within 1.0."""
    pytest.importorskip("sklearn")
    from fastlr import demo
    data = demo.load_digits_split(seed=0)
    epochs = 20
    schedule = demo.make_optimizers(epochs * int(np.ceil(len(data[0]) / 64)))["AdamW"][1]
    accuracy = {}
    for precision in ("fp32", "bf16", "8bit", "4bit"):
        model = demo.MLP(seed=0)   # 4810 params in one buffer: all of them held in `precision`
        opt = fastlr.AdamW(model.params, lr=schedule, weight_decay=1e-2, state_precision=precision)
        accuracy[precision] = 100 * demo.train(model, opt, data, epochs=epochs, seed=0)["test_accuracy"]
    for precision, allowed in (("bf16", 0.5), ("8bit", 0.5), ("4bit", 1.0)):
        assert abs(accuracy[precision] - accuracy["fp32"]) <= allowed, accuracy


def tiny_gpt(torch, vocab=64, width=64, layers=2, heads=2, context=32):
    """GPT-2's shape, small: token and position embeddings, pre-LayerNorm causal self-attention blocks with
    4x MLPs, a final LayerNorm and a linear head."""
    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = torch.nn.Embedding(vocab, width), torch.nn.Embedding(context, width)
            block = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                                     batch_first=True, norm_first=True)
            self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.norm, self.head = torch.nn.LayerNorm(width), torch.nn.Linear(width, vocab)
            self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(context))

        def forward(self, x):
            h = self.tok(x) + self.pos.weight[: x.shape[1]]
            return self.head(self.norm(self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)))
    return GPT()


def markov_tokens(torch, n, context, vocab=64, seed=0):
    """Token sequences of a random sparse Markov chain (each token has 4 likely successors): structure a
    small model learns within a few hundred steps."""
    gen = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, vocab, (vocab, 4), generator=gen)
    seq = torch.empty(n, context + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=gen)
    for t in range(context):
        seq[:, t + 1] = nxt[seq[:, t], torch.randint(0, 4, (n,), generator=gen)]
    return seq


def test_tiny_lm_final_loss_close_to_fp32():
    """300 steps of fastlr.torch.AdamW: the 8-bit run's final loss within 2% of the fp32 run's."""
    torch = pytest.importorskip("torch")
    import fastlr.torch as ft
    batch_size, context = 8, 16
    data = markov_tokens(torch, 300 * batch_size, context)
    final = {}
    for precision in ("fp32", "8bit"):
        torch.manual_seed(0)
        model = tiny_gpt(torch, context=context)
        opt = ft.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, state_precision=precision)
        losses = []
        for step in range(300):
            batch = data[batch_size * step: batch_size * (step + 1)]
            loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        final[precision] = float(np.mean(losses[-20:]))
        if precision == "8bit":
            assert opt.state[model.blocks.layers[0].linear1.weight]["exp_avg"].dtype == torch.uint8
    assert final["fp32"] < 0.8 * np.log(64)   # it learned something
    assert abs(final["8bit"] - final["fp32"]) <= 0.02 * final["fp32"], final
