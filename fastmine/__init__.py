"""fastmine: mine and reprogram frozen pretrained GAN generators."""
