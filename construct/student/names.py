"""The student architectures and encoders a user may name, apart from the network code so that the CLI
can offer them as choices without importing torch."""

ARCHS = ("unet", "fpn", "segformer")
# User-facing encoder names → smp's (mobilenet-v3 comes through timm's universal encoder).
ENCODERS = {
    "resnet18": "resnet18", "resnet34": "resnet34", "efficientnet-b0": "efficientnet-b0",
    "mobilenet-v3": "tu-mobilenetv3_large_100", "mobilenet-v3-small": "tu-mobilenetv3_small_100",
    "mit_b0": "mit_b0", "mit_b1": "mit_b1",
}
