"""Leaf utilities every layer may use (downloads into the user cache); they import nothing above errors."""
