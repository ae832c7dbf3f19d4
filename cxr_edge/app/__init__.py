"""The cxr-edge field app (Kivy). UI only: every image, model, check and case goes through ``cxr_edge``."""
