"""``cxr-edge bench``: speed, memory and size of a model pack on the machine this runs on."""
