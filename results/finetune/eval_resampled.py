"""Top-1 of a 28-px run evaluated on a folder at another size right after pos_embed resampling, no training step.
Usage: python results/finetune/eval_resampled.py RUN_DIR FOLDER IMG_SIZE"""

import sys

import torch

from deit.data import load_data
from deit.finetune import adapt_state_dict, read_source
from deit.models import create_model

torch.set_num_threads(1)
run, folder, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = read_source(run)
model = create_model(source.name, num_classes=len(source.classes), img_size=size).eval()
state_dict, changes = adapt_state_dict(source, model, source.classes)
model.load_state_dict(state_dict)
data = load_data(f"imagefolder:{folder}", "val", img_size=size, cache_images=True)
correct = 0
with torch.no_grad():
    for start in range(0, len(data), 250):
        x = (data.images[start:start + 250].float() / 255 - data.mean[0]) / data.std[0]
        correct += int((model(x).logits.argmax(1) == data.labels[start:start + 250]).sum())
print(f"{run} at {size} px after resampling, no step: top-1 {100 * correct / len(data):.2f}% ({len(data)} images)")
