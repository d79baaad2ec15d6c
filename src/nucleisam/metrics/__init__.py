"""Instance-segmentation metrics (Dice, AJI, AJI+, PQ, mSA) with the field's reference semantics."""
