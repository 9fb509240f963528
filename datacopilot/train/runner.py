"""The optimizer-step loop of :func:`datacopilot.train.sft`: accumulation, clipping, logging, checkpoints."""

from __future__ import annotations

import json
import math
import os
import time

from datacopilot.errors import DataCopilotError


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
    def step(self, batches: list[dict]) -> dict:
        """Forward/backward over the micro-batches of one optimizer step, then clip and update."""
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
        lr = self.optimizer.get_lr()
        if self.scaler:  # pragma: no cover - gpu only; unscales before clipping and skips steps with inf grads
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()
        fills = [float(b["fill"]) for b in batches if "fill" in b]
        if not math.isfinite(loss_sum):
            raise DataCopilotError(f"loss is {loss_sum} at step {self._step + 1}; lower `lr` or check the data")
        return {"loss": loss_sum / denom, "lr": lr, "target_tokens": total,
                "fill": sum(fills) / len(fills) if fills else float("nan")}

    # -- the loop ---------------------------------------------------------------------------------------
    def train(self, start: int, history: list[dict]) -> list[dict]:
        from tqdm.auto import tqdm

        from .data import make_loader

        cfg = self.cfg
        accum = cfg.grad_accum
        loader = make_loader(self.data, self.collate, start * accum, cfg.max_steps * accum)
        bar = tqdm(total=cfg.max_steps, initial=start, disable=not cfg.progress, desc="sft", unit="step",
                   dynamic_ncols=True)
        self._step = start
        log_path = os.path.join(cfg.output_dir, "log.jsonl")
        with open(log_path, "w", encoding="utf-8") as f:  # the history so far (a resumed run's first steps)
            f.writelines(json.dumps(h) + "\n" for h in history)
        pending: list[dict] = []
        t0 = time.perf_counter()
        try:
            for batch in loader:
                pending.append(batch)
                if len(pending) < accum:
                    continue
                rec = self.step(pending)
                pending = []
                seconds = time.perf_counter() - t0
                self._step += 1
                rec = {"step": self._step, **rec, "seconds": seconds,
                       "tokens_per_s": rec["target_tokens"] / seconds if seconds > 0 else float("nan")}
                history.append(rec)
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                tok_s=f"{rec['tokens_per_s']:.0f}", fill=f"{rec['fill']:.1%}")
                if self._step % cfg.log_every == 0 or self._step == cfg.max_steps:
                    self._log(_line(rec, cfg.max_steps), bar)
                if cfg.save_every and self._step % cfg.save_every == 0 and self._step < cfg.max_steps:
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

        state = {"cursor": self._step * self.cfg.grad_accum, "history": history, "config": self.cfg.to_dict()}
        self.last_checkpoint = save_checkpoint(self.cfg.output_dir, self._step, self.model, self.optimizer, state,
                                               keep=self.cfg.keep_checkpoints)
        return self.last_checkpoint

    # -- the end ----------------------------------------------------------------------------------------
    def finish(self, history: list[dict], tokenizer, device: str, samples: int) -> dict:
        from .plot import save_loss_curve

        cfg = self.cfg
        out = cfg.output_dir
        checkpoint = self.save(history)
        final, adapter = os.path.join(out, "final"), None
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
        timed = [h for h in history if h.get("seconds")]
        tokens = sum(h["target_tokens"] for h in timed)
        seconds = sum(h["seconds"] for h in timed)
        result = {
            "loss": history[-1]["loss"] if history else float("nan"), "steps": len(history), "history": history,
            "output_dir": out, "checkpoint": checkpoint, "model_dir": final, "adapter_dir": adapter,
            "loss_curve": curve,
            "tokens_per_s": tokens / seconds if seconds else float("nan"),
            "fill_rate": self.data.fill_rate(0), "samples": samples, "device": device,
            "dropped": self.data.dropped, "truncated": self.data.truncated,
        }
        self.echo(f"trained {result['steps']} steps on {samples} samples ({device}): loss "
                  f"{history[0]['loss'] if history else float('nan'):.4f} -> {result['loss']:.4f}, "
                  f"{result['tokens_per_s']:.0f} target tokens/s, fill {result['fill_rate']:.1%}")
        self.echo(f"checkpoint {checkpoint}; model {final}; loss curve {curve}")
        return result


def _line(rec: dict, max_steps: int) -> str:
    return (f"step {rec['step']}/{max_steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
            f"tok/s {rec['tokens_per_s']:.0f}  fill {rec['fill']:.1%}")
