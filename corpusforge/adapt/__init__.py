"""Adapting a trained GPT: LoRA (``lora.py``, on an optionally 4-bit base: ``nf4.py``), prompt tuning
(``prompt.py``), prefix tuning (``prefix.py``) and a reward model (``reward.py``); data and the training loop in
``data.py`` and ``finetune.py``. Needs the ``train`` extra (torch)."""
