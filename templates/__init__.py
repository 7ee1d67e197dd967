"""What the freeze step renders: the sh stub, the PyInstaller spec and the runtime entry point.

Shipped inside the wheel as encoderfile.templates (pyproject maps this top-level folder).
"""
