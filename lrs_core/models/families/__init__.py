"""Model families behind one interface (:mod:`.base`), and the Qwen2-VL / Qwen2.5-VL family."""
