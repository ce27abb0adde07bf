// placeholder: the quant codec tests land with the codec
