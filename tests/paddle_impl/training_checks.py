"""Checks every detector of the Paddle tree passes in training; each architecture's tests call them on its tiny model.
`total_loss() -> scalar tensor`: the model's summed loss on the test's fixed batch."""
import paddle


def _adamw(model, lr, **kwargs):
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=[p for p in model.parameters() if not p.stop_gradient],
                                  **kwargs)


def loss_before_and_after_one_step(model, total_loss, lr):
    """One AdamW step (no weight decay) of every trainable parameter -> (loss before, loss after) as floats."""
    model.train()
    opt = _adamw(model, lr, weight_decay=0.0)
    before = total_loss()
    opt.clear_grad()
    before.backward()
    opt.step()
    return before.item(), total_loss().item()


def params_without_gradient(model, total_loss, steps=2, lr=1e-3):
    """For each of `steps` AdamW steps, the names of the trainable parameters whose gradient is missing or all 0."""
    model.train()
    opt = _adamw(model, lr)
    no_grad = []
    for _ in range(steps):
        loss = total_loss()
        opt.clear_grad()
        loss.backward()
        no_grad.append([n for n, p in model.named_parameters()
                        if not p.stop_gradient and (p.grad is None or not p.grad.numpy().any())])
        opt.step()
    return no_grad
