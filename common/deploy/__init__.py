"""Deployment, framework-free: infer_cfg.yml (PaddleDetection's deploy config), numpy preprocessing from it,
input globbing, results JSON and drawing, and the inference command line shared by torch_impl.infer and
paddle_impl.infer. The programs themselves are `<framework>_impl/models/deploy.py: DeployModel`."""
