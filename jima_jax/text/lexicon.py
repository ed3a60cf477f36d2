"""The team's clinical lexicon: how chest X-ray reports name findings, negate and hedge them.

Pure data, read by `labeler.py` (observation labels, normal/abnormal) and `entities.py` (entity
words). Written for this project after reading the CheXpert phrase lists and the IU X-ray reports;
it covers IU X-ray's frequent findings outside the 14 CheXpert observations (calcified granuloma,
degenerative spine, scoliosis, hiatal hernia, emphysema, low lung volumes, ...) because IU's MeSH
"normal" label treats those as abnormal.

Conventions: every phrase is a regular expression over normalised text (lowercase, hyphens and
slashes turned into spaces, single spaces) and matches whole words (the labeler adds the word
boundaries); `\\w*` marks a stem ("atelecta\\w*" = atelectasis, atelectatic).
"""

from __future__ import annotations

# Words between a trigger and the finding it governs ("no large left pleural effusion").
_ANY = r'(?:\w+ ){0,4}'

# ---------------------------------------------------------------------- direct mentions
# A finding named outright: positive unless negated or hedged.
OBSERVATION_PHRASES: dict[str, tuple[str, ...]] = {
    'Enlarged Cardiomediastinum': (
        r'(?:widen\w*|widening|enlarge\w*|prominen\w*) (?:of )?(?:the )?'
        r'(?:superior |upper )?mediastin\w*',
        r'mediastinal (?:widening|enlargement|prominence|mass|adenopathy|lymphadenopathy)',
        r'paratracheal (?:stripe )?(?:prominence|widening|fullness|enlargement|mass|adenopathy)',
        r'(?:prominen\w*|widen\w*|fullness|lobulat\w*) (?:\w+ ){0,2}(?:right )?paratracheal',
        r'(?:prominent|enlarged|widened) (?:vascular pedicle|aortopulmonary window)',
    ),
    'Cardiomegaly': (
        r'cardiomegaly', r'cardiac (?:enlargement|hypertrophy)', r'cardiomyopathy',
        r'(?:enlarge\w*|large|prominent|prominence of the) (?:\w+ )?'
        r'(?:heart|cardiac (?:silhouette|shadow|contour|size))',
        r'enlargement of (?:the )?(?:heart|cardiac (?:silhouette|shadow|contour|size))',
    ),
    'Lung Lesion': (
        r'nodul\w*', r'masse?s?', r'tumou?rs?', r'neoplasm\w*', r'carcinoma\w*', r'malignan\w*',
        r'metasta\w*', r'(?:lung|pulmonary|cavitary|cavitating) lesions?', r'cavitat\w*', r'cavity',
        r'(?:lung|pulmonary) cysts?', r'round (?:opacity|density)',
    ),
    'Lung Opacity': (
        r'opaci\w*', r'densit(?:y|ies)', r'infiltrat\w*', r'air ?space (?:disease|process)',
        r'(?:interstitial|reticular|reticulonodular) (?:markings?|pattern|prominence|opacit\w*|'
        r'disease|lung disease|changes?|thickening|process)',
        r'reticula\w*', r'(?:increased|prominent|coarse\w*) (?:\w+ )?markings',
        r'scar\w*', r'fibros\w*', r'fibrotic', r'haz\w*', r'ground glass',
        r'peribronchial (?:cuffing|thickening)', r'bronchial wall thickening',
        r'(?:airspace|alveolar) (?:filling|shadowing)',
    ),
    'Edema': (
        r'edema\w*', r'(?:vascular|pulmonary|venous) (?:congestion|engorgement)',
        r'venous hypertension',
        r'congestive (?:heart )?failure', r'heart failure', r'chf', r'fluid overload',
        r'congestion', r'kerley', r'cephaliz\w*', r'engorge\w*',
        r'(?:indistinct\w*|prominen\w*) (?:\w+ ){0,2}(?:vascular\w*|vasculature|vessels)',
        r'(?:vascular\w*|vasculature) (?:is |are )?(?:(?!not )\w+ )?'
        r'(?:indistinct|prominent|engorged|congested)',
    ),
    'Consolidation': (r'consolidat\w*',),
    'Pneumonia': (r'pneumonia\w*', r'pneumonitis', r'bronchopneumonia', r'infection\w*',
                  r'infectious', r'infected'),
    'Atelectasis': (r'atelecta\w*', r'collapsed?'),
    'Pneumothorax': (r'pneumothora\w*', r'hydropneumothora\w*', r'hemopneumothora\w*'),
    'Pleural Effusion': (r'effusions?', r'(?:pleural|fissural) fluid', r'hydropneumothora\w*',
                         r'hemothora\w*',
                         r'fluid (?:in|within|along) (?:the )?(?:\w+ )?(?:fissures?|pleural)'),
    'Pleural Other': (
        r'pleural (?:thickening|scar\w*|plaques?|calcification\w*|fibrosis|reaction|'
        r'parenchymal scar\w*|based (?:scar\w*|opacit\w*))',
        r'pleuro ?parenchymal (?:scar\w*|thickening|opacit\w*)', r'fibrothorax',
        r'(?:apical|biapical) (?:pleural )?(?:capping|caps?|thickening)',
        r'(?:apical|biapical) pleural scar\w*',
        r'fissur\w* thickening', r'thicken\w* (?:of |in |along )?(?:the )?(?:\w+ )?fissures?',
        r'thickening of the (?:\w+ )?pleura', r'pleural (?:\w+ )?thickening',
    ),
    'Fracture': (r'fractur\w*', r'fx'),
    'Support Devices': (
        r'catheters?', r'lines?', r'picc', r'tubes?', r'pacemakers?', r'pacers?', r'aicd', r'icd',
        r'defibrillator\w*',
        r'(?:pacing|pacer|pacemaker|cardiac|ekg|ecg|monitor\w*|monitoring) '
        r'(?:\w+ )?(?:leads?|wires?)',
        r'leads', r'generator', r'stents?', r'(?:valve|valvular) (?:replacement|prosthesis)',
        r'prosthetic (?:\w+ )?valve', r'valve replacement', r'hardware', r'ports?', r'port a cath',
        r'portacath', r'mediport', r'devices?', r'cannula', r'drains?',
        r'(?:orthopedic|fixation) \w+', r'(?:surgical )?(?:plates?|screws?|rods?)', r'fixation',
        r'electrodes?', r'(?:bone )?anchors?',
        r'tracheostomy', r'coils?', r'shunt', r'filter', r'stimulator',
        r'(?:chest|jugular|subclavian|central|venous|xxxx) (?:\w+ )?(?:with )?(?:its |the )?'
        r'(?:distal )?tip',
    ),
}

# Phrases that look like a mention of the observation but are not (checked on the mention's span).
OBSERVATION_EXCLUSIONS: dict[str, tuple[str, ...]] = {
    'Enlarged Cardiomediastinum': (r'calci\w* (?:\w+ )?(?:mediastinal|paratracheal) \w+',),
    'Cardiomegaly': (),
    'Lung Lesion': (r'(?:calcified|granulomatous|calcific) (?:\w+ ){0,2}nodul\w*',
                    r'nodul\w* (?:\w+ )?(?:calcification|granuloma)\w*', r'massive\w*',
                    r'(?:soft tissue|breast|neck|thyroid|mediastinal|hilar) masse?s?',
                    r'mass effect', r'nipple \w+', r'bony (?:lesions?|metasta\w*)'),
    'Lung Opacity': (r'(?:bone|bony|soft tissue|metallic|calcified|calcific|nodular|round|'
                     r'breast|nipple) (?:\w+ )?(?:opaci\w*|densit(?:y|ies))',
                     r'(?:opaci\w*|densit(?:y|ies)) (?:\w+ )?(?:overlying|projecting over) '
                     r'(?:the )?(?:\w+ )?(?:soft tissues?|breasts?)',
                     r'pleural (?:\w+ )?(?:scar\w*|fibrosis)', r'pleuro ?parenchymal scar\w*',
                     r'(?:apical|biapical) pleural scar\w*', r'scarring of the pleura',
                     r'(?:sternotomy|surgical|postsurgical|chest wall) (?:\w+ )?scar\w*',
                     r'densit(?:y|ies) (?:of|in) the (?:\w+ )?(?:spine|bones?|vertebra\w*)',
                     r'(?:increased|decreased) bone densit\w*'),
    'Edema': (r'(?:soft tissue|subcutaneous) edema', r'hilar congestion'),
    'Consolidation': (),
    'Pneumonia': (),
    'Atelectasis': (r'(?:vertebral|vertebra|vertebrae|compression) (?:\w+ ){0,2}collapse\w*',
                    r'collapse\w* (?:of )?(?:the )?(?:\w+ )?'
                    r'(?:vertebra\w*|vertebral body|t\d+|l\d+)'),
    'Pneumothorax': (),
    'Pleural Effusion': (r'pericardial effusions?',),
    'Pleural Other': (),
    'Fracture': (),
    'Support Devices': (r'(?:mid|midclavicular|pleural|septal|kerley|fissure|azygos|paraspinal|'
                        r'paratracheal|skin|fissural|b) lines?',
                        r'lines? (?:of|in) the fissure', r'(?:air|fluid) ?lines?', r'lined',
                        r'lung lines', r'(?:fallopian|eustachian) tubes?', r'plate ?like',
                        r'device\w* (?:artifact|overlying the skin)'),
}

# ---------------------------------------------------------------------- structures + qualifiers
# Cardiomegaly and Enlarged Cardiomediastinum are mostly reported by naming a structure and then
# qualifying it ("the heart is normal in size", "heart size is mildly enlarged"). The nearest
# qualifier after the structure (or up to three words before it) decides the label.
STRUCTURES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (structure, observations when enlarged/borderline, observations when normal)
    (r'heart(?: size)?|heart shadow|cardiac (?:silhouette|shadow|size|contours?|configuration)',
     ('Cardiomegaly',), ('Cardiomegaly',)),
    # An enlarged cardiomediastinal silhouette is read as a large heart; a normal one clears both.
    (r'cardio ?mediastinal (?:contours?|silhouettes?|width|size)|cardiomediastinum',
     ('Cardiomegaly',), ('Cardiomegaly', 'Enlarged Cardiomediastinum')),
    (r'(?:cardiac and )?(?:mediastinum|mediastinal (?:contours?|silhouettes?|width|size))',
     ('Enlarged Cardiomediastinum',), ('Enlarged Cardiomediastinum',)),
)
QUALIFIER_UNCERTAIN = (r'borderline(?: enlarged| large| size)?',)
QUALIFIER_ABNORMAL = (r'(?:\w+ly )?enlarge\w*', r'large', r'larger', r'increased',
                      r'(?:\w+ly )?widen\w*', r'prominen\w*', r'wide', r'globular')
QUALIFIER_NORMAL = (r'(?:near |at |on )?(?:the )?upper limits? (?:of )?normal',
                    r'top(?: of)? normal', r'high normal', r'upper normal', r'normal',
                    r'unremarkable', r'within normal limits', r'(?:is |are )?not enlarged',
                    r'no (?:\w+ )?enlargement', r'negative', r'normal in size', r'small',
                    r'stable and normal')

# ---------------------------------------------------------------------- other abnormal findings
# Not one of the 14 observations, but it makes a study abnormal (blocks "No Finding").
OTHER_FINDING_PHRASES: tuple[str, ...] = (
    r'granulom\w*', r'calcifi\w*', r'calcinosis', r'calcific', r'degenerat\w*', r'spondyl\w*',
    r'osteophyt\w*', r'spur\w*', r'(?:dextro|levo)?scolio\w*', r'(?:dextro|levo)?convex\w*',
    r'kyphos\w*', r'kyphotic', r'lordos\w*', r'hernia\w*', r'emphysema\w*', r'copd',
    r'chronic obstructive', r'hyperinflat\w*', r'hyperexpan\w*', r'hyperaerat\w*', r'overinflat\w*',
    r'hyperlucen\w*', r'hyperdist\w*', r'flatten\w*', r'bulla\w*', r'blebs?', r'tortu\w*',
    r'ectasia', r'ectatic', r'unfold\w*', r'atherosclero\w*', r'atheroma\w*', r'elevat\w*',
    r'eventration', r'blunt\w*', r'low (?:lung )?volumes?',
    r'(?:lung )?volumes (?:are |were |is )+(?:\w+ ){0,3}(?:low|reduced|decreased)',
    r'low side', r'endplate', r'curvature', r'prosthes[ie]s', r'piercings?',
    r'(?:nipple|navel|umbilical) (?:ring|jewelry|piercing)s?',
    r'jewelry', r'osteodystroph\w*', r'motion', r'artifacts?', r'contrast',
    r'(?:reduced|decreased|diminished|lower) (?:lung )?volumes?', r'hypoinflat\w*',
    r'hypoventilat\w*', r'underinflat\w*',
    r'(?:poor|shallow|suboptimal|limited|low) (?:inspiration|inspiratory \w+)',
    r'deformit\w*', r'sternotomy', r'cabg', r'clips?', r'sutures?', r'postsurgical',
    r'post surgical',
    r'postoperative', r'surgical changes?', r'status post', r'mastectom\w*', r'lobectom\w*',
    r'pneumonectom\w*', r'resection', r'thoracotom\w*', r'crowd\w*', r'prominen\w*',
    r'nipple shadows?', r'thicken\w*', r'bronchiecta\w*', r'bronchitis', r'bronchiolitis',
    r'airways? disease', r'reactive airway', r'aneurysm\w*', r'dilat\w*', r'lymphadenopathy',
    r'adenopathy', r'(?:enlarged|prominent|calcified) (?:\w+ )?(?:lymph )?nodes?', r'osteopeni\w*',
    r'osteoporo\w*', r'demineraliz\w*', r'arthritis', r'arthropath\w*', r'arthritic', r'dish',
    r'hyperostosis', r'fusion', r'pectus', r'excavatum', r'carinatum', r'shift\w*', r'lucenc\w*',
    r'lucent', r'pneumoperitoneum', r'free (?:intraperitoneal )?air', r'pneumomediastinum',
    r'foreign bod\w*', r'metallic', r'bullets?', r'shrapnel', r'(?:bb|pellet)s?', r'epicardial fat',
    r'fat pad', r'azygos (?:lobe|fissure)', r'hilar (?:enlargement|prominence|fullness|adenopathy)',
    r'(?:enlarged|prominent|full|bulky) hila\w*', r'sarcoid\w*', r'tuberculosis', r'tb',
    r'cysts?', r'cystic', r'limited (?:exam\w*|study|evaluation)', r'(?:exam\w*|study|evaluation) '
    r'(?:is )?limited', r'rotat\w*', r'underpenetrat\w*', r'overpenetrat\w*', r'lordotic',
    r'nondiagnostic', r'suboptimal', r'technically', r'obscur\w*', r'volume loss',
    r'(?:chronic|old|healed|remote|prior) (?:\w+ ){0,2}'
    r'(?:changes?|disease|injury|infection|process)',
    r'chronic', r'sequelae', r'residua\w*', r'surgical', r'amputat\w*', r'mastectomy',
    r'implants?', r'expander\w*', r'aspirat\w*', r'air ?fluid levels?',
    r'pleural (?:\w+ )?(?:density|densities)',
    r'density', r'densities', r'abnormal\w*', r'irregular\w*', r'enlarge\w*', r'hypertension',
    r'pulmonary arter\w* (?:\w+ )?(?:enlarged|prominent|dilated)', r'widen\w*', r'distend\w*',
    r'distension', r'loculat\w*', r'effacement', r'valve', r'wires?', r'leads?', r'markers?',
    r'pericardial effusions?',
)
OTHER_FINDING_EXCLUSIONS: tuple[str, ...] = (
    r'no (?:\w+ )?(?:acute )?(?:abnormal\w*|findings?)', r'rotat\w* (?:of )?(?:the )?patient',
    r'(?:patient|slightly|mildly|minimally) rotated', r'limited (?:by|due)', r'soft tissue',
    r'elevated (?:blood|white|wbc|bp)', r'without (?:\w+ )?abnormal\w*',
    r'shift (?:of )?(?:the )?trachea',
)

# ---------------------------------------------------------------------- negation and hedging
# Before the mention ("no pleural effusion", "without evidence of pneumothorax").
NEGATION_PRE = (
    r'no', r'not', r'without', r'negative(?: for)?', r'free of', r'clear of', r'absence of',
    r'absent', r'resolution of', r'resolved', r'removal of', r'removed', r'nor', r'neither',
    r'rather than', r'instead of', r'no evidence of', r'no signs? of',
    r'never', r'denies', r'interval resolution of', r'cleared',
)
# After the mention ("pneumothorax is not seen", "the effusion has resolved").
NEGATION_POST = (
    r'(?:is |are |was |were |has |have )?(?:not|no longer) (?:\w+ )?(?:seen|identified|present|'
    r'visuali[sz]ed|appreciated|evident|demonstrated|noted|detected|visible|apparent|'
    r'definitely seen|shown|observed)',
    r'(?:is |are |has |have )?(?:been )?(?:absent|resolved|cleared|gone|removed)',
    r'(?:is |are )?not (?:\w+ )?(?:enlarged|large|widened)', r'(?:is |are )?negative',
    r'(?:appears? |is |are |remains? )(?:\w+ )?(?:within (?:the )?(?:normal )?limits|normal)',
)
# Hedges that win even over a negation word ("cannot exclude pneumonia" is uncertain).
UNCERTAIN_OVER_NEGATION = (
    r"(?:cannot|can not|could not|can't|not) (?:be )?"
    r"(?:entirely |completely |totally |definitely )?"
    r"(?:excluded|exclude|ruled out|rule out)",
    r"(?:cannot|can not|could not|can't) (?:be )?(?:entirely |definitely )?"
    r"(?:differentiated|distinguished)",
    r'not (?:entirely |well |definitely )?(?:excluded|ruled out)', r'no new', r'rule out',
    r'not (?:\w+ )?(?:certain|sure|clear)',
)
UNCERTAIN_PRE = (
    r'may', r'might', r'could', r'can', r'possibl\w*', r'probabl\w*', r'likely', r'question\w*',
    r'suspicious', r'suspect\w*', r'suggest\w*', r'concern\w*', r'worrisome', r'versus', r'vs',
    r'differential', r'consider\w*', r'borderline', r'equivocal', r'indeterminate', r'uncertain',
    r'represent\w*', r'vague\w*', r'either', r'presum\w*', r'atypical', r'favou?r\w*',
    r'reflect\w*', r'(?:evaluat\w*|assess\w*|look\w*|search\w*) for', r'to exclude',
)
UNCERTAIN_POST = (
    r'(?:is |are |was |were )?(?:possible|possibly|suspected|questioned|questionable|likely|'
    r'probable|probably|favou?red|considered|a consideration)',
)
# Alternatives named side by side ("atelectasis or scarring", "effusion versus thickening"): both
# are uncertain when the mention is next to the connective.
UNCERTAIN_ADJACENT = (r'or', r'versus', r'vs', r'and or')
# "No" that does not negate what follows ("no change in the cardiomegaly").
PSEUDO_NEGATION = (
    r'no (?:significant |interval |appreciable |substantial |definite )?'
    r'(?:change|increase|decrease|difference|progression|worsening)',
    r'not (?:significantly |substantially )?(?:changed|increased|decreased|improved)',
    r'no longer (?:\w+ )?(?:seen|present|visible|identified)',
    r'without (?:significant |interval )?change', r'not only', r'gram negative',
)
# Words that end a negation/hedge scope inside a sentence.
SCOPE_BREAKS = (
    r'but', r'however', r'although', r'though', r'except', r'apart from', r'aside from',
    r'which', r'with', r'there (?:is|are)', r'and there', r'otherwise', r'while', r'whereas',
    r'yet', r'consistent with', r'compatible with', r'secondary to', r'in the setting of',
)

# ---------------------------------------------------------------------- entity words
# Words that are part of a clinical entity (spec section 3: anatomy and observation terms, as
# RadGraph would tag them), used for the Task-1 target. Descriptors such as "acute", "mild",
# "normal", "evidence" or "process" are deliberately absent.
ENTITY_ANATOMY = frozenset("""
    abdomen aorta aortic apex apical apices arch atrium axilla azygos base bases basilar basal
    bibasilar biapical bilateral bone bones bony bronchi bronchial bronchovascular cardiac
    cardiomediastinal cardiopulmonary cardiophrenic carina chest clavicle clavicles costophrenic
    diaphragm diaphragms diaphragmatic esophagus fissure fissures hemidiaphragm hemidiaphragms
    hemithorax heart hila hilar hilum humeral humerus interstitial interstitium left lingula
    lingular lobe lobes lower lung lungs mediastinal mediastinum middle midlung osseous paratracheal
    parenchyma parenchymal perihilar pleura pleural pulmonary retrocardiac rib ribs right shoulder
    shoulders silhouette soft spine sternum subclavian subdiaphragmatic svc thoracic thorax trachea
    tracheal upper vascular vascularity vasculature ventricle ventricular vertebra vertebrae
    vertebral zone airway airways alveolar atrial spinal sternal subcutaneous tissue tissues neck
    abdominal lumbar cervical lymph node nodes volume volumes t-spine thoracolumbar midthoracic
    coronary artery arteries breast disc endplate quadrant wall left-sided right-sided
    intraperitoneal""".split())
ENTITY_OBSERVATION = frozenset("""
    atelectasis atelectatic aneurysm adenopathy airspace bulla bullae calcification
    calcifications calcified calcinosis cardiomegaly catheter cicatrix collapse congestion
    consolidation consolidations copd cyst cysts deformity deformities degenerative dextroscoliosis
    edema effusion effusions emphysema emphysematous enlarged enlargement eventration fibrosis
    fracture fractures granuloma granulomas granulomatous hernia hiatal hyperexpanded hyperexpansion
    hyperinflated hyperinflation hypoinflation infiltrate infiltrates kyphosis levoscoliosis
    lymphadenopathy mass masses nodule nodules nodular opacities opacity opacification osteopenia
    osteophytes pacemaker picc pneumonia pneumothorax pneumothoraces scar scarring scoliosis
    spondylosis sternotomy stent tortuous tortuosity tube wires clips density densities
    hypertension ectasia elevation elevated blunting blunted thickening markings crowding
    prominence prominent widening widened metastatic metastases spurring osteophyte
    pneumoperitoneum pneumomediastinum lucency cardiomyopathy infection atherosclerosis
    atherosclerotic hyperlucent flattening flattened fibrotic reticular haziness hypoinflated
    fusion cabg cholecystectomy postsurgical postoperative arthritic calcific curvature line
    leads""".split())
