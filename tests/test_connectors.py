import pytest
import torch

from vlkit.compression import available_compressors, build_compressor
from vlkit.connectors import Connector, available_connectors, build_connector, register_connector


def _states(b=2, n=5, d=32, layers=3):
    return tuple(torch.randn(b, n, d) for _ in range(layers + 1))


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu"])
def test_connector_shapes_and_cls(name):
    hs = _states()
    drop = build_connector(name, 32, 64)
    keep = build_connector(name, 32, 64, keep_cls=True)
    assert drop(hs).shape == (2, 4, 64) and drop.num_tokens(4) == 4
    assert keep(hs).shape == (2, 5, 64) and keep.num_tokens(4) == 5
    # penultimate layer by default: changing the last layer must not change the output
    hs2 = hs[:-1] + (torch.randn_like(hs[-1]),)
    assert torch.equal(drop(hs), drop(hs2))
    assert drop.layers == (-2,)


def test_unknown_connector_lists_known():
    with pytest.raises(ValueError, match="unknown connector 'nope'.*linear.*mlp2x_gelu"):
        build_connector("nope", 8, 8)
    with pytest.raises(ValueError, match="unknown compressor 'nope'.*identity"):
        build_compressor("nope", 8)


def test_registered_connector_plugs_in_and_reads_several_layers():
    @register_connector("test_cls_stack")
    class ClsStack(Connector):  # Bottleneck-style: [cls] of several layers
        def __init__(self, vision_hidden, text_hidden, layers=(1, 2), **kw):
            super().__init__(vision_hidden, text_hidden, **kw)
            self._layers, self.proj = tuple(layers), torch.nn.Linear(vision_hidden, text_hidden)

        @property
        def layers(self):
            return self._layers

        def num_tokens(self, num_patches):
            return len(self._layers)

        def forward(self, hidden_states, text_embeds=None, text_mask=None):
            return self.proj(torch.stack([hidden_states[i][:, 0] for i in self._layers], 1))

    assert "test_cls_stack" in available_connectors()
    c = build_connector("test_cls_stack", 32, 16, layers=(1, 3))
    assert c(_states()).shape == (2, 2, 16) and c.layers == (1, 3)


def test_identity_compressor():
    c = build_compressor("identity", 16)
    x = torch.randn(2, 7, 16)
    assert "identity" in available_compressors() and c(x) is x and c.num_tokens(7) == 7
