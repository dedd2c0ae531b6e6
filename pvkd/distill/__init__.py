"""Point-to-Voxel Knowledge Distillation: the teacher cache, the four distillation losses, supervoxel sampling."""
