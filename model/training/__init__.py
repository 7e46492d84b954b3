"""The training programs: the shared loop, teacher, student (ODE pairs, DMD), autoencoder, latent cache."""
