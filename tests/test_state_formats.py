"""Which state format each param got and why (`opt.state_formats()`, logged once at construction at debug level),
checked against the states the optimizer really keeps."""

import logging

import torch
from conftest import DEVICE

import v0adam


def bf16_model():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(64, 256)  # rows of one whole block, 16384 elements: 8 bits
    wide = torch.nn.Linear(256, 300)  # rows of 256 (8 bits); its bias of 300 is below min_8bit_size
    odd = torch.nn.Linear(300, 256)  # rows of 300: not whole blocks
    return torch.nn.Sequential(embedding, wide, odd).to(DEVICE, torch.bfloat16)


def test_each_param_says_its_format_why_and_its_bytes():
    model = bf16_model()
    opt = v0adam.V0AdamW(model.named_parameters(), state_dtype=torch.uint8, master_weights=True, amsgrad=True)
    formats = {state_format.param: state_format for state_format in opt.state_formats()}
    assert list(formats) == [name for name, _ in model.named_parameters()]
    for name, param in model.named_parameters():
        state = opt.state[param]
        assert formats[name].shape == tuple(param.shape)
        assert formats[name].moments == ("8-bit" if "exp_avg_code" in state else "float32")
        assert formats[name].master == "int16 remainder" and state["param_remainder"].dtype == torch.int16
    assert [formats[name].moments for name in formats] == ["8-bit", "8-bit", "float32", "float32", "float32"]
    assert formats["1.bias"].reason.endswith("but 300 elements, fewer than min_8bit_size (4096)")
    assert formats["2.weight"].reason.endswith("but rows of 300 elements, not whole 256-element blocks")
    # m, v and max v: a code and a 256th of a float32 scale each, or 4 bytes; and the 2-byte remainder.
    assert formats["0.weight"].bytes_per_param == 3 * (1 + 4 / 256) + 2
    assert formats["1.bias"].bytes_per_param == 3 * 4 + 2


def test_unnamed_params_are_numbered_as_in_state_dict_and_a_group_says_what_it_asked():
    first, second = torch.nn.Parameter(torch.zeros(8, 256)), torch.nn.Parameter(torch.zeros(8, 256))
    opt = v0adam.V0AdamW([{"params": [first]}, {"params": [second], "state_dtype": torch.bfloat16}], min_8bit_size=0)
    formats = opt.state_formats()
    assert [state_format.param for state_format in formats] == ["param 0", "param 1"]
    assert formats[0].reason == "the default" and formats[0].bytes_per_param == 8
    assert formats[1].moments == "bfloat16" and formats[1].reason == "asked by its param group's state_dtype"
    assert formats[1].bytes_per_param == 4 and opt.state[second]["exp_avg"].dtype == torch.bfloat16


def test_the_formats_are_logged_once_at_construction_at_debug_level(caplog):
    with caplog.at_level(logging.DEBUG, logger="v0adam"):
        opt = v0adam.V0AdamW(bf16_model().parameters(), state_dtype=torch.uint8)
    records = [record for record in caplog.records if record.name == "v0adam"]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    assert "5 params: 2 8-bit, 3 float32 moments" in records[0].getMessage()
    assert all(str(state_format) in records[0].getMessage() for state_format in opt.state_formats())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="v0adam"):
        v0adam.V0AdamW(bf16_model().parameters(), state_dtype=torch.uint8)
    assert not caplog.records


def test_float64_params_keep_float64_moments_whatever_float_dtype_is_asked():
    """Moments narrower than the params would lose what a float64 model keeps; 8-bit ones are another matter,
    asked for their bytes."""
    param = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64, device=DEVICE))
    opt = v0adam.V0AdamW([param], state_dtype=torch.bfloat16)
    param.grad = torch.randn_like(param)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == opt.state[param]["exp_avg_sq"].dtype == torch.float64
    (state_format,) = opt.state_formats()
    assert state_format.moments == "float64" and "float64 param" in state_format.reason
