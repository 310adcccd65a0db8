"""Metric implementations that training and evaluation share: LPIPS, PSNR/SSIM."""
