"""fl_lab: a hands-on teaching kit for *Focal Loss for Dense Object Detection* (Lin et al., 2017)."""

__version__ = "0.1.0"
