"""The ids and names every text module, the data records and the metrics share: reserved token
ids, the 14 CheXpert observations in the package's column order, and the label values."""

# Reserved token ids, identical for every tokenizer mode.
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
NUM_SPECIAL_TOKENS = 4

# The 14 CheXpert observations, in the order used by every label array of the package.
OBSERVATIONS = (
    'No Finding',
    'Enlarged Cardiomediastinum',
    'Cardiomegaly',
    'Lung Lesion',
    'Lung Opacity',
    'Edema',
    'Consolidation',
    'Pneumonia',
    'Atelectasis',
    'Pneumothorax',
    'Pleural Effusion',
    'Pleural Other',
    'Fracture',
    'Support Devices',
)
NUM_OBSERVATIONS = len(OBSERVATIONS)

# Label values of a `labels` array entry.
LABEL_POSITIVE = 1
LABEL_NEGATIVE = 0
LABEL_UNCERTAIN = -1
LABEL_BLANK = -2  # not mentioned
