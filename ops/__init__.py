"""Multi-scale deformable attention for both frameworks.

Import the framework you use; this package imports neither on its own:

    from ops.torch_ms_deform_attn import ms_deform_attn    # PyTorch
    from ops.paddle_ms_deform_attn import ms_deform_attn   # PaddlePaddle

See ops/README.md for backends, the build cache and ahead-of-time builds.
"""
