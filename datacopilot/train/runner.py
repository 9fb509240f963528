"""The optimizer-step loop of :func:`datacopilot.train.sft`: accumulation, clipping, logging, checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time

from datacopilot.errors import DataCopilotError

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold SIGINT and SIGTERM that arrive inside the block; when it ends, hand the first one to the handler that
    was in place (Ctrl-C: KeyboardInterrupt). In threads other than the main one (where signals cannot be
    handled) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in _HELD}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if held:
            handler = old[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler != signal.SIG_IGN:  # the default action of both is to stop the process
                raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (a scheduler or a preempted machine stopping the job) raises KeyboardInterrupt inside the block, so
    training saves its checkpoint on the way out as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Run:
    """One training run's state and its optimizer steps (what :func:`datacopilot.train.sft` drives)."""

    def __init__(self, cfg, model, optimizer, scheduler, data, collate, echo):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.data, self.collate, self.echo = data, collate, echo
        self.last_checkpoint = None
        self.scaler = None
        if cfg.precision == "fp16":  # pragma: no cover - gpu only
            import paddle

            self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15)

    # -- one optimizer step -----------------------------------------------------------------------------
    def backward(self, batches: list[dict]) -> dict:
        """Forward/backward over the micro-batches of one optimizer step (gradients only; no weight moves)."""
        import paddle

        from .build import forward_sum, target_tokens

        total = sum(target_tokens(b["labels"]) for b in batches)
        denom = float(max(total, 1))
        loss_sum = 0.0
        amp = self.cfg.precision != "fp32"
        for b in batches:
            with paddle.amp.auto_cast(enable=amp, dtype="bfloat16" if self.cfg.precision == "bf16" else "float16",
                                      level="O1"):
                s, _ = forward_sum(self.model, b, self.cfg)
            loss = s / denom
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += float(s)
        if not math.isfinite(loss_sum):  # before the update: the weights stay those of the last good step
            raise DataCopilotError(f"loss is {loss_sum} at step {self._step + 1}; lower `lr` or check the data")
        fills = [float(b["fill"]) for b in batches if "fill" in b]
        return {"loss": loss_sum / denom, "lr": self.optimizer.get_lr(), "target_tokens": total,
                "fill": sum(fills) / len(fills) if fills else float("nan")}

    def update(self) -> None:
        """Clip and apply the gradients, advance the learning-rate schedule (one optimizer step)."""
        if self.scaler:  # pragma: no cover - gpu only; unscales before clipping and skips steps with inf grads
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()

    def step(self, batches: list[dict], history: list[dict] | None = None, t0: float | None = None) -> dict:
        """One optimizer step: backward, then the update, the step counter and the history record as one unit
        (an interrupt arriving in between is held until all three are done), so a checkpoint's step is always the
        step its weights are at. ``t0`` is when the step's data started to be read (default: now)."""
        t0 = time.perf_counter() if t0 is None else t0
        rec = self.backward(batches)
        with deferred_interrupts():
            self.update()
            self._step += 1
            seconds = time.perf_counter() - t0
            rec = {"step": self._step, **rec, "seconds": seconds,
                   "tokens_per_s": rec["target_tokens"] / seconds if seconds > 0 else float("nan")}
            if history is not None:
                history.append(rec)
        return rec

    # -- the loop ---------------------------------------------------------------------------------------
    def train(self, start: int, history: list[dict], stop: int | None = None) -> list[dict]:
        """Optimizer steps ``start + 1 .. stop`` (``stop`` defaults to ``max_steps``; the schedule and the data
        order follow ``max_steps`` whatever ``stop`` is). Ctrl-C or SIGTERM saves a checkpoint and re-raises."""
        from tqdm.auto import tqdm

        from .data import make_loader

        cfg = self.cfg
        accum = cfg.grad_accum
        stop = cfg.max_steps if stop is None else stop
        loader = make_loader(self.data, self.collate, start * accum, stop * accum)
        bar = tqdm(total=stop, initial=start, disable=not cfg.progress, desc="sft", unit="step",
                   dynamic_ncols=True)
        self._step = start
        log_path = os.path.join(cfg.output_dir, "log.jsonl")
        with open(log_path, "w", encoding="utf-8") as f:  # the history so far (a resumed run's first steps)
            f.writelines(json.dumps(h) + "\n" for h in history)
        pending: list[dict] = []
        reported = len(self.data.skipped)
        t0 = time.perf_counter()
        try:
            with terminate_as_interrupt():
                for batch in loader:
                    pending.append(batch)
                    if len(pending) < accum:
                        continue
                    rec = self.step(pending, history, t0)
                    pending = []
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}", fill=f"{rec['fill']:.1%}")
                    for bad in self.data.skipped[reported:]:
                        self._log(f"warning: skipped {bad['error']} (bad_samples: skip)", bar)
                    reported = len(self.data.skipped)
                    if self._step % cfg.log_every == 0 or self._step == stop:
                        self._log(_line(rec, cfg.max_steps), bar)
                    if cfg.save_every and self._step % cfg.save_every == 0 and self._step < stop:
                        self.save(history)
                    t0 = time.perf_counter()
        except KeyboardInterrupt:
            if self._step > start:
                self._log(f"interrupted: saved {self.save(history)}; continue with resume", bar)
            raise
        finally:
            bar.close()
        return history

    def _log(self, line: str, bar) -> None:
        if bar.disable:
            self.echo(line)
        else:
            bar.write(line)

    def save(self, history: list[dict]) -> str:
        from .checkpoint import save_checkpoint

        state = {"cursor": self._step * self.cfg.grad_accum, "history": history, "config": self.cfg.to_dict(),
                 "skipped": self.data.skipped}
        self.last_checkpoint = save_checkpoint(self.cfg.output_dir, self._step, self.model, self.optimizer, state,
                                               keep=self.cfg.keep_checkpoints)
        return self.last_checkpoint

    # -- the end ----------------------------------------------------------------------------------------
    def finish(self, history: list[dict], tokenizer, device: str, samples: int) -> dict:
        """Save the last checkpoint, the loss curve, the skipped samples and (a finished run) the final model."""
        from .plot import save_loss_curve

        cfg = self.cfg
        out = cfg.output_dir
        checkpoint = self.save(history)
        done = self._step >= cfg.max_steps
        final = adapter = None
        if done:
            final = os.path.join(out, "final")
            if cfg.lora:  # the adapter on its own, and the model with it merged (loads without peft)
                from .build import merged_model

                adapter = os.path.join(out, "lora")
                (self.model.lm if cfg.model_type == "vlm" else self.model).save_pretrained(adapter)
                merged_model(self.model, cfg).save_pretrained(final)
            else:
                self.model.save_pretrained(final)
            if cfg.model_type == "lm":
                tokenizer.save_pretrained(final)
        curve = save_loss_curve(history, os.path.join(out, "loss.png"),
                                title=f"sft loss ({cfg.model_type}, {'lora' if cfg.lora else 'full'})")
        skipped_path = os.path.join(out, "bad_samples.jsonl")
        if self.data.skipped:
            with open(skipped_path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.data.skipped)
        elif os.path.exists(skipped_path):
            os.remove(skipped_path)
        timed = [h for h in history if h.get("seconds")]
        tokens = sum(h["target_tokens"] for h in timed)
        seconds = sum(h["seconds"] for h in timed)
        result = {
            "loss": history[-1]["loss"] if history else float("nan"), "steps": len(history), "history": history,
            "output_dir": out, "checkpoint": checkpoint, "model_dir": final, "adapter_dir": adapter,
            "loss_curve": curve, "finished": done, "max_steps": cfg.max_steps,
            "tokens_per_s": tokens / seconds if seconds else float("nan"),
            "fill_rate": self.data.fill_rate(0), "samples": samples - len(self.data.skipped), "device": device,
            "dropped": self.data.dropped, "truncated": self.data.truncated,
            "skipped": len(self.data.skipped), "bad_samples": list(self.data.skipped),
        }
        self.echo(f"trained {result['steps']} steps on {result['samples']} samples ({device}): loss "
                  f"{history[0]['loss'] if history else float('nan'):.4f} -> {result['loss']:.4f}, "
                  f"{result['tokens_per_s']:.0f} target tokens/s, fill {result['fill_rate']:.1%}")
        if self.data.skipped:
            self.echo(f"skipped {len(self.data.skipped)} sample(s) with a missing or undecodable image "
                      f"(bad_samples: skip); each is listed in {skipped_path}")
        if done:
            self.echo(f"checkpoint {checkpoint}; model {final}; loss curve {curve}")
        else:
            self.echo(f"stopped at step {self._step} of {cfg.max_steps}: checkpoint {checkpoint}; loss curve "
                      f"{curve}; continue with resume (--resume), the schedule stays that of {cfg.max_steps} steps")
        return result


def _line(rec: dict, max_steps: int) -> str:
    return (f"step {rec['step']}/{max_steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
            f"tok/s {rec['tokens_per_s']:.0f}  fill {rec['fill']:.1%}")
