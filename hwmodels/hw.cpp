// placeholder; replaced by the hardware model
