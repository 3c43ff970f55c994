"""Bi-GFF (paper Eq. 1-3): identity-concat at init, and the official sequential update order."""

import torch

from ctsdg.bigff import BiGFF


def test_identity_concat_at_init():
    f = BiGFF(8)
    t, s = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    assert torch.equal(f(t, s), torch.cat((t, s), 1))


def test_update_order_uses_the_updated_texture_feature():
    f = BiGFF(4)
    with torch.no_grad():
        f.texture_gamma.fill_(0.7)
        f.structure_gamma.fill_(-1.3)
    t, s = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    e = torch.cat((t, s), 1)
    g_s, g_t = f.structure_gate(e), f.texture_gate(e)
    t_new = t + 0.7 * g_s * s  # Eq. (1)
    s_new = s - 1.3 * g_t * t_new  # Eq. (2) with F_t' (official order)
    torch.testing.assert_close(f(t, s), torch.cat((t_new, s_new), 1))
