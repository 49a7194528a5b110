"""Snapshots of everything about a model that camkit must leave untouched, shared by the tests.

:func:`snapshot` records every module's hook dicts (forward, pre-forward, backward, state-dict, ...)
and the global module hooks, training flags, plain attributes (e.g. ``inplace``), the module tree,
instance-level ``forward`` overrides, every parameter's ``requires_grad``, ``.grad`` (identity and
values) and tensor hooks, and the bit-exact state_dict; :func:`assert_unchanged` compares a model
with one. :func:`tensor_snapshot` / :func:`assert_tensor_unchanged` do the same for an input tensor.
"""
import torch
from torch.nn.modules import module as module_globals

HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks", "_global_forward_hooks_always_called", "_global_forward_hooks_with_kwargs",
    "_global_buffer_registration_hooks", "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)


def _plain_attributes(module):
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, type(None)))}


def snapshot(model):
    """Everything about ``model`` that the engine must not change."""
    modules = {}
    for name, module in model.named_modules():
        modules[name] = {
            "id": id(module),
            "type": type(module),
            "training": module.training,
            "attributes": _plain_attributes(module),
            "instance_forward": "forward" in vars(module),
            "hooks": {d: list(getattr(module, d, {}).items()) for d in HOOK_DICTS},
            "children": [(n, id(c)) for n, c in module.named_children()],
        }
    parameters = {}
    for name, p in model.named_parameters():
        parameters[name] = {
            "requires_grad": p.requires_grad,
            "grad_id": id(p.grad) if p.grad is not None else None,
            "grad": None if p.grad is None else p.grad.clone(),
            "tensor_hooks": list((getattr(p, "_backward_hooks", None) or {}).items()),
            "post_accumulate_hooks": list((getattr(p, "_post_accumulate_grad_hooks", None) or {}).items()),
        }
    state = {k: v.clone() for k, v in model.state_dict().items()}
    global_hooks = {d: list(getattr(module_globals, d, {}).items()) for d in GLOBAL_HOOK_DICTS}
    return modules, parameters, state, global_hooks


def assert_unchanged(model, before):
    modules, parameters, state, global_hooks = snapshot(model)
    b_modules, b_parameters, b_state, b_global = before
    assert list(modules) == list(b_modules), "the module tree changed"
    for name in modules:
        for field, value in modules[name].items():
            assert value == b_modules[name][field], f"module {name!r}: {field} changed: {b_modules[name][field]} -> {value}"
    for name, info in parameters.items():
        old = b_parameters[name]
        assert info["requires_grad"] == old["requires_grad"], f"{name}: requires_grad changed"
        assert info["grad_id"] == old["grad_id"], f"{name}: .grad was replaced or created"
        if old["grad"] is not None:
            assert torch.equal(info["grad"], old["grad"]), f"{name}: existing .grad was modified"
        assert info["tensor_hooks"] == old["tensor_hooks"], f"{name}: tensor hooks changed"
        assert info["post_accumulate_hooks"] == old["post_accumulate_hooks"], f"{name}: grad hooks changed"
    assert list(state) == list(b_state), "state_dict keys changed"
    for key, value in state.items():
        assert value.dtype == b_state[key].dtype and torch.equal(value, b_state[key]), f"state_dict[{key!r}] changed"
    assert global_hooks == b_global, "global module hooks changed"


def tensor_snapshot(tensor):
    """Values, version counter, ``requires_grad``, ``.grad`` and tensor hooks of an input tensor."""
    return {"values": tensor.detach().clone(), "version": tensor._version, "requires_grad": tensor.requires_grad,
            "grad": None if tensor.grad is None else tensor.grad.clone(),
            "hooks": list((tensor._backward_hooks or {}).items())}


def assert_tensor_unchanged(tensor, before):
    now = tensor_snapshot(tensor)
    assert torch.equal(now["values"], before["values"]) and now["version"] == before["version"], "input mutated"
    assert now["requires_grad"] == before["requires_grad"], "input requires_grad changed"
    assert (now["grad"] is None) == (before["grad"] is None), "input .grad created or dropped"
    assert now["hooks"] == before["hooks"], "input tensor hooks changed"
