// placeholder: the lowrank codec tests land with the codec
