"""V0AdamW (v0="zero") in place of torch.optim.AdamW under the Hugging Face Trainer and Lightning, on the CPU, with
tiny models built from configs (nothing downloaded): the same loss at every step, and a run resumed from a
checkpoint continues as the uninterrupted one. The frameworks come with the `integration` extra
(`pip install -e ".[integration]"`; `make test` and CI install it)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: the models are built from configs
transformers = pytest.importorskip("transformers", reason="the integration extra is not installed")
lightning = pytest.importorskip("lightning", reason="the integration extra is not installed")

import v0adam  # noqa: E402

LR = 1e-2
OPTIMIZERS = {
    "torch": lambda params: torch.optim.AdamW(params, lr=LR),
    "v0adam": lambda params: v0adam.V0AdamW(params, lr=LR, v0="zero"),
}
# Losses are float32 reductions of the same computation: equal unless the trajectories part.
LOSS_TOL = dict(rtol=1e-6, atol=0)


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; each is its own label (the model shifts them)."""

    def __init__(self, count=64, length=16, vocab=64):
        self.ids = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def hf_train(make_optimizer, output_dir, resume_from_checkpoint=None, max_steps=8):
    """Trainer with gradient accumulation, clipping that bites (norms are about 0.6) and a warmup schedule; a
    checkpoint every 4 steps. Returns each optimizer step's logged loss."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = make_optimizer(model.parameters())
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 2, max_steps)
    arguments = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=arguments, train_dataset=Tokens(), optimizers=(optimizer, scheduler)
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_hugging_face_trainer_trains_and_resumes_as_with_torch(tmp_path):
    theirs = hf_train(OPTIMIZERS["torch"], tmp_path / "torch")
    ours = hf_train(OPTIMIZERS["v0adam"], tmp_path / "v0adam")
    assert sorted(ours) == list(range(1, 9))
    torch.testing.assert_close(list(ours.values()), list(theirs.values()), **LOSS_TOL)
    # Steps 6-8 depend on the states the checkpoint carried (step 5 on the saved weights alone).
    resumed = hf_train(OPTIMIZERS["v0adam"], tmp_path / "v0adam", tmp_path / "v0adam" / "checkpoint-4")
    torch.testing.assert_close(
        [resumed[step] for step in range(5, 9)], [theirs[step] for step in range(5, 9)], **LOSS_TOL
    )


class Regression(lightning.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        self.make_optimizer = make_optimizer
        self.losses = []

    def training_step(self, batch, batch_index):
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.net(inputs).float(), targets)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def lightning_fit(make_optimizer, checkpoint_dir, ckpt_path=None):
    """Two epochs of four steps under 16-mixed precision with a CPU GradScaler and gradient clipping that bites (the
    losses are about 10); a checkpoint after each epoch. Returns each step's loss."""
    inputs = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    module = Regression(make_optimizer)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        gradient_clip_val=0.5,
        plugins=[lightning.pytorch.plugins.MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))],
        callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(checkpoint_dir, every_n_epochs=1, save_top_k=-1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16), ckpt_path=ckpt_path)
    return module.losses


def test_lightning_16_mixed_with_clipping_trains_and_resumes_as_with_torch(tmp_path):
    theirs = lightning_fit(OPTIMIZERS["torch"], tmp_path / "torch")
    ours = lightning_fit(OPTIMIZERS["v0adam"], tmp_path / "v0adam")
    assert len(ours) == 8
    torch.testing.assert_close(ours, theirs, **LOSS_TOL)
    resumed = lightning_fit(OPTIMIZERS["v0adam"], tmp_path / "resumed", tmp_path / "v0adam" / "epoch=0-step=4.ckpt")
    torch.testing.assert_close(resumed, theirs[4:], **LOSS_TOL)


def accelerate_run(directory, save_after=None, load=False, steps=4):
    """accelerate's default checkpointing (safetensors for the model): train, save_state after `save_after` steps,
    or load_state first. Returns the params and the optimizer's states after `steps` steps."""
    import accelerate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 2))
    optimizer = v0adam.V0AdamW(model.parameters(), lr=1e-2, state_dtype=torch.uint8, min_8bit_size=0)
    accelerator = accelerate.Accelerator(cpu=True, project_dir=str(directory))
    model, optimizer = accelerator.prepare(model, optimizer)
    start = 0
    if load:
        accelerator.load_state(str(directory / "state"))
        start = save_after
    for step in range(start, steps):
        x = torch.randn(8, 256, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        accelerator.backward(model(x).square().mean())
        optimizer.step()
        if step + 1 == save_after and not load:
            accelerator.save_state(str(directory / "state"))
    inner = optimizer.optimizer
    states = [value.clone() for p in model.parameters() for value in inner.state[p].values()]
    return [p.detach().clone() for p in model.parameters()], states


def test_accelerate_save_state_and_load_state_resume_bitwise(tmp_path):
    params, states = accelerate_run(tmp_path, save_after=2)
    assert (tmp_path / "state" / "model.safetensors").exists()
    resumed_params, resumed_states = accelerate_run(tmp_path, save_after=2, load=True)
    for ours, theirs in zip(params + states, resumed_params + resumed_states, strict=True):
        assert torch.equal(ours, theirs)
