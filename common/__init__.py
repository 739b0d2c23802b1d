"""facecom: shared code for the FACECOM notebooks (Task A gender, Task B identity under distortion).

Modules are imported by name (`from common import data, models`), so importing the package stays
cheap and a notebook only pays for what it uses.
"""
__version__ = "0.1.0"
