"""The trainer, built one way for the run and for the sanity check: model, SFTTrainer subclass, sample generation.

`train.train` and `sanity.run_sanity` both call `build_trainer`; what
differs between them is only the arguments (`trainer_config`) and the
callbacks, so a fix here reaches both.
"""

from __future__ import annotations

from sftjob.runconfig import RunConfig
from sftjob_runtime.callbacks import TokenCounter
from sftjob_runtime.prepare import Prepared, hf_token, model_error

SAMPLE_MAX_NEW_TOKENS = 64


def make_trainer_class():
    """SFTTrainer with token counting and, where it is faster, the plain transformers loss.

    TRL's fused LM head saves memory on GPUs, but on CPUs without Triton it
    runs full-vocabulary fp32 ops and recomputes logits in backward (~0.7x
    the tokens/s of a plain loop in bf16, DESIGN.md section 9). So on CPU
    the loss comes from the model's own forward (same value to ~1e-6).
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTJobTrainer(SFTTrainer):
        def __init__(self, *args, token_counter: TokenCounter, fused_head: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.token_counter = token_counter
            self.fused_head = fused_head

        def create_model_card(self, *args, **kwargs):
            # TRL's hub model card lands in the checkpoint folder, not in the exported model, and
            # asks the W&B run for its URL, which an offline run warns it lacks at every save.
            return None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                if "attention_mask" in inputs:
                    self.token_counter.tokens += int(inputs["attention_mask"].sum())
                elif "position_ids" in inputs:
                    self.token_counter.tokens += int(inputs["position_ids"].numel())
            if self.fused_head:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Packed (padding-free) batches must not use the KV cache, or sequences attend to each other.
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return SFTJobTrainer


def load_model(cfg: RunConfig, model_path: str, dtype: str, attention: str):
    """The base model in the chosen dtype and attention, quantized and wrapped in LoRA adapters as the spec says."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trustRemoteCode,
        token=hf_token(),
        dtype=getattr(torch, dtype),
        attn_implementation=attention,
    )
    if cfg.model.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=cfg.model.quantization == "4bit",
            load_in_8bit=cfg.model.quantization == "8bit",
            bnb_4bit_compute_dtype=getattr(torch, dtype),
            bnb_4bit_quant_type="nf4",
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    except OSError as e:
        raise model_error(cfg.model.source, e) from None
    lora = cfg.training.lora
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        # PEFT recognises the "all-linear" shorthand only as a plain string.
        targets = list(lora.targetModules)
        target_modules = targets[0] if targets == ["all-linear"] else targets
        model = get_peft_model(
            model,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                       target_modules=target_modules, task_type="CAUSAL_LM"),
        )
    return model


def generate_sample(model, tokenizer, messages: list[dict]) -> str:
    """Greedy completion of one prompt (the conversation up to its last assistant turn)."""
    import torch

    prompt = messages
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            prompt = messages[:i]
            break
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids["input_ids"].to(device),
            attention_mask=ids["attention_mask"].to(device),
            max_new_tokens=SAMPLE_MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    if was_training:
        model.train()
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def build_trainer(prep: Prepared, args, model, train_dataset, eval_dataset, callbacks: list, counter: TokenCounter):
    """The SFTJobTrainer for `prep` with `args`; `callbacks[0]` (the monitor) runs first.

    First in line, the monitor's tokens/s (and GPU memory) added to each log
    reach TensorBoard and W&B too.
    """
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=prep.tokenizer,
        callbacks=callbacks,
        token_counter=counter,
        fused_head=prep.hardware.device == "cuda",
    )
    monitor = callbacks[0]
    trainer.callback_handler.callbacks.remove(monitor)
    trainer.callback_handler.callbacks.insert(0, monitor)
    return trainer
